//! Seed 2.3 made real: the Security lock across processes.
//!
//! 1. Two children contend through a READWRITE lock: one registered writer
//!    appends to a shared log, readers read it concurrently.
//! 2. An operator not on an AUTHORISATION lock's list is refused.
//! 3. A deadlock is detected by WaitTime and the handler runs.
//! 4. A holder killed with SIGKILL is recovered by the next acquirer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use xme::core::process::fork_child;
use xme::core::{Operator, SharedRegion};
use xme::security::{LockType, Security, SecurityError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let region = SharedRegion::anonymous(4096)?;
    let entries: &AtomicU64 = region.place(0)?;
    let reads: &AtomicU64 = region.place(8)?;
    let overlaps: &AtomicU64 = region.place(16)?;

    println!("1. READWRITE: one registered writer, many readers");
    let rw = Security::new(LockType::ReadWrite)?;
    let writer = Operator::alloc();
    rw.register(writer);
    let (w, r) = (&rw, &rw);
    let writer_child = fork_child(move || {
        for _ in 0..50 {
            let guard = w.lock(writer).expect("the registered writer may write");
            // The shared log is being changed: a reader must not be inside now.
            entries.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(200));
            drop(guard);
        }
        0
    })?;
    let reader_child = fork_child(move || {
        let me = Operator::alloc();
        // This reader may not write: it is not the registered writer.
        match r.lock(me) {
            Err(SecurityError::NotWriter { .. }) => {}
            _ => return 1,
        }
        for _ in 0..50 {
            let guard = r.read(me).expect("any operator may read");
            let before = entries.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(100));
            if entries.load(Ordering::SeqCst) != before {
                overlaps.fetch_add(1, Ordering::SeqCst); // a write during our read
            }
            reads.fetch_add(1, Ordering::SeqCst);
            drop(guard);
        }
        0
    })?;
    let (wf, rf) = (writer_child.wait()?, reader_child.wait()?);
    println!(
        "   writer {wf}, reader {rf}: {} writes, {} reads, {} writes seen during a read",
        entries.load(Ordering::SeqCst),
        reads.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst)
    );

    println!("2. AUTHORISATION: only listed operators");
    let auth = Security::new(LockType::Authorisation)?;
    let (member, stranger) = (Operator::alloc(), Operator::alloc());
    auth.authorize(&[member])?;
    drop(auth.lock(member)?);
    println!("   {member} (authorised): acquired and released");
    match auth.lock(stranger) {
        Err(e) => println!("   {stranger} (not authorised): refused: {e}"),
        Ok(_) => println!("   {stranger}: unexpectedly admitted"),
    }

    println!("3. WaitTime: a deadlock detected");
    let mut mutex = Security::new(LockType::Mutex)?;
    mutex.set_wait_time(Some(Duration::from_millis(100)));
    mutex.dead_lock_fun(
        Some(Arc::new(|d| {
            println!("   DeadLockFun called: {} after {:?}", d.mark, d.waited)
        })),
        None,
    );
    let (a, b) = (Operator::alloc(), Operator::alloc());
    let held = mutex.lock(a)?;
    // `b` waits for `a`, which will not let go in time.
    match mutex.lock(b) {
        Err(e) => println!("   acquire by {b} gave up: {e}"),
        Ok(_) => println!("   acquire by {b} unexpectedly succeeded"),
    }
    drop(held);
    drop(mutex.lock(b)?);
    println!("   after {a} released, {b} acquired: the lock is still usable");

    println!("4. A holder killed while holding the lock");
    let spin = Security::new(LockType::Spin)?;
    let victim_op = Operator::alloc();
    let taken: &AtomicU64 = region.place(24)?;
    let s = &spin;
    let victim = fork_child(move || {
        let _guard = s.lock(victim_op).expect("free lock");
        taken.store(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(60));
        0
    })?;
    while taken.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let victim_pid = victim.pid();
    let fate = victim.kill()?;
    println!("   holder pid {victim_pid} {fate}");
    let next = Operator::alloc();
    let guard = spin.lock_timeout(next, Duration::from_secs(5))?;
    println!(
        "   {next} acquired it; previous owner died: {}",
        guard.previous_owner_died()
    );
    Ok(())
}
