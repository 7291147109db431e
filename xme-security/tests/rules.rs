//! Refusals, wait limits, deadlock handlers, update_lock, capacities.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use xme_core::process::fork_child;
use xme_security::{
    AUTH_CAPACITY, DEADLOCKMARK_ONLOCK, DEADLOCKMARK_UNLOCK, LockType, Operator, Security,
    SecurityError,
};

#[test]
fn unauthorised_wrong_writer_and_wrong_releaser_are_refused_every_time() {
    let auth = Security::new(LockType::Authorisation).unwrap();
    let (ok, stranger) = (Operator::alloc(), Operator::alloc());
    auth.authorize(&[ok]).unwrap();
    let rw = Security::new(LockType::ReadWrite).unwrap();
    let writer = Operator::alloc();
    rw.register(writer);
    let mutex = Security::new(LockType::Mutex).unwrap();
    let holder = Operator::alloc();
    let _held = mutex.lock(holder).unwrap();
    for _ in 0..1000 {
        assert!(matches!(
            auth.acquire(stranger),
            Err(SecurityError::Unauthorised { .. })
        ));
        assert!(matches!(
            rw.acquire(stranger),
            Err(SecurityError::NotWriter { .. })
        ));
        let e = mutex.release(stranger).unwrap_err();
        assert!(
            matches!(e, SecurityError::NotHolder { holder: Some(h), .. } if h == holder),
            "{e}"
        );
        assert_eq!(e.mark(), Some(DEADLOCKMARK_UNLOCK));
    }
    // ADMIN is authorised and the default writer until register.
    assert!(auth.is_authorised(Operator::ADMIN));
    drop(auth.lock(ok).unwrap());
    drop(auth.lock(Operator::ADMIN).unwrap());
}

#[test]
fn wait_time_runs_the_handler_returns_deadlock_and_the_lock_stays_usable() {
    let mut sec = Security::new(LockType::Mutex).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    sec.dead_lock_fun(
        Some(Arc::new(move |d| {
            assert_eq!(d.mark, DEADLOCKMARK_ONLOCK);
            seen.fetch_add(1, Ordering::SeqCst);
        })),
        None,
    );
    sec.set_wait_time(Some(Duration::from_millis(50)));
    let a = Operator::alloc();
    let g = {
        let sec = &sec;
        fork_child(move || {
            let _g = sec.lock(a).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            0
        })
        .unwrap()
    };
    while sec.holder().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let b = Operator::alloc();
    let t = Instant::now();
    let err = sec.acquire(b).unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(
        t.elapsed() < Duration::from_millis(350),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(err.mark(), Some(DEADLOCKMARK_ONLOCK));
    assert!(matches!(err, SecurityError::Deadlock(ref d) if d.holder_pid == Some(g.pid() as u32)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A per-call wait overrides WaitTime: wait for the holder to finish.
    let got = sec.acquire_timeout(b, Duration::from_secs(5)).unwrap();
    assert!(!got.previous_owner_died);
    sec.release(b).unwrap();
    assert!(g.wait().unwrap().is_success());
}

#[test]
fn releasing_without_holding_runs_the_release_handler() {
    let mut sec = Security::new(LockType::Spin).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    sec.dead_lock_fun(
        None,
        Some(Arc::new(move |d| {
            assert_eq!(d.mark, DEADLOCKMARK_UNLOCK);
            seen.fetch_add(1, Ordering::SeqCst);
        })),
    );
    let e = sec.release(Operator::alloc()).unwrap_err();
    assert!(matches!(e, SecurityError::NotHolder { holder: None, .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn acquiring_twice_is_refused_and_release_twice_too() {
    let sec = Security::new(LockType::Mutex).unwrap();
    let op = Operator::alloc();
    let r = sec.acquire(op).unwrap();
    assert!(!r.previous_owner_died);
    assert!(matches!(
        sec.acquire(op),
        Err(SecurityError::AlreadyHeld { .. })
    ));
    sec.release(op).unwrap();
    assert!(matches!(
        sec.release(op),
        Err(SecurityError::NotHolder { .. })
    ));
}

#[test]
fn disable_always_succeeds() {
    let sec = Security::new(LockType::Disable).unwrap();
    let (a, b) = (Operator::alloc(), Operator::alloc());
    let _ga = sec.lock(a).unwrap();
    let _gb = sec.lock(b).unwrap();
    sec.release(Operator::alloc()).unwrap();
}

#[test]
fn update_lock_while_unlocked_and_while_held() {
    let sec = Security::new(LockType::Mutex).unwrap();
    let a = Operator::alloc();
    // Unlocked: the new type applies to the next acquire.
    sec.update_lock(LockType::Authorisation);
    assert_eq!(sec.lock_type(), LockType::Authorisation);
    assert!(matches!(
        sec.acquire(a),
        Err(SecurityError::Unauthorised { .. })
    ));
    sec.authorize(&[a]).unwrap();
    // Held: the holder keeps the lock and releases it normally, even under
    // DISABLE; meanwhile others follow the new type's rules.
    let g = sec.lock(a).unwrap();
    sec.update_lock(LockType::Disable);
    drop(sec.lock(Operator::alloc()).unwrap());
    sec.update_lock(LockType::Spin);
    let b = Operator::alloc();
    assert!(sec.acquire_timeout(b, Duration::from_millis(20)).is_err());
    g.release().unwrap();
    drop(sec.lock(b).unwrap());
}

#[test]
fn the_authorised_list_has_a_fixed_capacity() {
    let sec = Security::new(LockType::Authorisation).unwrap();
    let ops: Vec<Operator> = (0..AUTH_CAPACITY - 1).map(|_| Operator::alloc()).collect();
    sec.authorize(&ops).unwrap(); // ADMIN + 31
    let e = sec.authorize(&[Operator::alloc()]).unwrap_err();
    assert!(matches!(e, SecurityError::AuthListFull { capacity } if capacity == AUTH_CAPACITY));
    assert!(ops.iter().all(|op| sec.is_authorised(*op)));
}

#[test]
fn a_lock_in_a_region_is_attached_not_reinitialised() {
    let region = xme_core::SharedRegion::anonymous(2 * xme_security::SecurityState::SIZE).unwrap();
    let first = Security::in_region(&region, 0, LockType::Spin).unwrap();
    first.set_wait_time(Some(Duration::from_millis(7)));
    let second = Security::in_region(&region, 0, LockType::Mutex).unwrap();
    assert_eq!(second.lock_type(), LockType::Spin);
    assert_eq!(second.wait_time(), Some(Duration::from_millis(7)));
    // Garbage where a lock should be is refused.
    let bytes: &std::sync::atomic::AtomicU32 =
        region.place(xme_security::SecurityState::SIZE).unwrap();
    bytes.store(0xdead_beef, Ordering::SeqCst);
    let e = Security::in_region(&region, xme_security::SecurityState::SIZE, LockType::Mutex)
        .unwrap_err();
    assert!(matches!(e, SecurityError::NotALock(_)), "{e}");
    // Misaligned or out-of-range offsets are region errors.
    assert!(matches!(
        Security::in_region(&region, 3, LockType::Mutex),
        Err(SecurityError::Region(_))
    ));
}

/// A child waits for `sec` (held here by `holder`) as `waiter`; `change`
/// then changes the rules and the hold is released. The child reports how
/// its wait ended: 0 refused as `expect` says, 1 got the lock, 2 other.
fn waiter_sees_new_rules(
    start: LockType,
    waiter: Operator,
    holder: Operator,
    change: impl Fn(&Security<'_>),
    expect: fn(&SecurityError) -> bool,
) {
    let sec = Security::new(start).unwrap();
    sec.register(holder);
    sec.authorize(&[holder]).unwrap();
    let held = sec.lock(holder).unwrap();
    let child = fork_child(
        || match sec.acquire_timeout(waiter, Duration::from_secs(10)) {
            Ok(_) => 1,
            Err(e) if expect(&e) => 0,
            Err(e) => {
                eprintln!("unexpected: {e}");
                2
            }
        },
    )
    .unwrap();
    // Let the child start waiting (past its spin, asleep), then change the
    // rules under it.
    std::thread::sleep(Duration::from_millis(100));
    change(&sec);
    drop(held);
    let fate = child.wait().unwrap();
    assert!(fate.is_success(), "the waiter kept the old rules: {fate}");
}

#[test]
fn a_waiter_applies_rules_changed_while_it_waits() {
    let (waiter, holder) = (Operator::alloc(), Operator::alloc());
    // MUTEX -> READWRITE: the waiter is not the writer.
    waiter_sees_new_rules(
        LockType::Mutex,
        waiter,
        holder,
        |s| s.update_lock(LockType::ReadWrite),
        |e| matches!(e, SecurityError::NotWriter { .. }),
    );
    // MUTEX -> AUTHORISATION: the waiter is not on the list.
    let sec_waiter = Operator::alloc();
    waiter_sees_new_rules(
        LockType::Mutex,
        sec_waiter,
        holder,
        |s| s.update_lock(LockType::Authorisation),
        |e| matches!(e, SecurityError::Unauthorised { .. }),
    );
    // READWRITE, writer changed by `register` while the old writer waits.
    waiter_sees_new_rules(
        LockType::ReadWrite,
        holder,
        holder,
        |s| s.register(Operator::alloc()),
        |e| matches!(e, SecurityError::NotWriter { .. }),
    );
}
