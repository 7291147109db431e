//! Named regions whose bytes were overwritten at random (a buggy or hostile
//! process of the same user can do that): every read and write operation of
//! a Manager, a Monitor and a Security lock over them must end, with a
//! value or a typed error: no hang, no crash, no panic.
//!
//! Each trial runs in a forked child under a deadline: a child still running
//! at the deadline is a hang, one that ends by a signal or a non-zero exit
//! (a panic) is a crash. `cargo test` runs a few hundred trials per kind;
//! the `#[ignore]`d test runs 10,000 per kind (CI runs it in release).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use xme_core::process::fork_child;
use xme_core::{Operator, SharedRegion};
use xme_monitor::{ManagerMessages, Monitor};
use xme_security::{LockType, Security};
use xme_shm::{Call, Manager, XmemBuilder};

/// How long one trial may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(10);
/// The wait the operations are given where they wait (locks, results).
const SHORT: Duration = Duration::from_millis(20);

/// xorshift64*: a reproducible stream of random numbers per trial.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Writes random bytes over 1 to 4 random spans of the region's payload:
/// mostly short spans (a word or a few), sometimes a whole page.
fn corrupt(region: &SharedRegion, rng: &mut Rng) {
    let len = region.payload_len();
    for _ in 0..1 + rng.below(4) {
        let span = match rng.below(8) {
            0 => 1 + rng.below(4096),
            1..=3 => 8,
            _ => 1 + rng.below(64),
        }
        .min(len);
        let at = rng.below(len - span + 1);
        let p = region.raw(at, span).unwrap();
        for i in 0..span {
            // SAFETY: `raw` checked [at, at + span) lies in the mapping; the
            // point of the test is to overwrite it (volatile: each write is
            // real), as a stray process of the same user could.
            unsafe { p.add(i).write_volatile(rng.next() as u8) };
        }
    }
}

fn manager_trial(name: &str, rng: &mut Rng) {
    let xmem = XmemBuilder::new()
        .named(name)
        .capacity(64)
        .arena_bytes(256 << 10)
        .buffer_capacity(16)
        .mailboxes(16)
        .build()
        .unwrap();
    let op = xmem.alloc_operator();
    for i in 0..40u64 {
        xmem.set(&format!("k{i}"), &vec![i; (i as usize * 37) % 300])
            .unwrap();
    }
    xmem.status(op, "before").unwrap();
    let _ = xmem.register("add", |_m: &Manager, (a, b): (u64, u64)| a + b);
    corrupt(xmem.region(), rng);
    // A lock word naming a live process would make an unbounded wait last
    // as long as that process: bound every wait, as a careful user does.
    xmem.security().set_wait_time(Some(SHORT));
    let _ = xmem.get::<Vec<u64>>("k3");
    let _ = xmem.get_raw("k7");
    let _ = xmem.get_table(&[]);
    let _ = xmem.get_table(&["k1", "k2"]);
    let _ = xmem.items();
    let _ = xmem.len();
    let _ = xmem.set("k5", &vec![5u64; 100]);
    let _ = xmem.set("new", &"fresh");
    let _ = xmem.update([("k6", 6u64)], Operator::ADMIN);
    let _ = xmem.update_with("counter", |c: Option<u64>| c.unwrap_or(0) + 1);
    let _ = xmem.modify("k8", |v: &mut Vec<u64>| v.push(8));
    let _ = xmem.delete(&["k9"], Operator::ADMIN);
    let _ = xmem.status(op, "after");
    let _ = xmem.statuses();
    let _ = xmem.guard_status();
    let _ = xmem.set_guard_status(true);
    let _ = xmem.keys_claimed();
    let _ = xmem.check();
    let _ = xmem.sweep();
    let _ = xmem.get_msg(&[]);
    let _ = xmem.update_msg(json!({"m": 1}), Operator::ADMIN);
    if let Ok(add) = xmem.named::<(u64, u64), u64>("add")
        && let Ok(call) = add.call(&(1, 2))
        && xmem.append_timeout(&call, op, SHORT).is_ok()
    {
        let _ = xmem.exec();
        let _ = xmem.get_result::<u64>(op, SHORT);
    }
    if let Ok(call) = Call::table_set("via-buffer", &1u8)
        && xmem.append_timeout(&call, op, SHORT).is_ok()
    {
        let _ = xmem.exec();
    }
    let _ = xmem.buffer_len();
    let _ = xmem.get_buffers();
    let _ = xmem.recover();
    let _ = xmem.clean(op);
    let _ = xmem.delete(&[], Operator::ADMIN);
    let _ = Manager::attach(name).map(|m| (m.len(), m.get_table(&[])));
}

fn monitor_trial(name: &str, rng: &mut Rng) {
    let monitor = Monitor::builder()
        .named(name)
        .capacity(8 << 10)
        .key([7; 32])
        .build()
        .unwrap();
    for i in 0..20 {
        monitor
            .update(
                json!({format!("k{i}"): [i, "text", {"n": i}]}),
                Operator::ADMIN,
            )
            .unwrap();
    }
    corrupt(monitor.region(), rng);
    monitor.security().set_wait_time(Some(SHORT));
    let _ = monitor.get(&[]);
    let _ = monitor.get(&["k1"]);
    let _ = monitor.items();
    let _ = monitor.capacity();
    let _ = monitor.update(json!({"new": 1}), Operator::ADMIN);
    let _ = monitor.modify(Operator::ADMIN, |m| {
        m.insert("new".into(), json!(2));
        Ok(())
    });
    let _ = monitor.delete(&["k2"], Operator::ADMIN);
    let frame = monitor.marshal();
    let _ = monitor.replace(serde_json::Map::new(), Operator::ADMIN);
    if let Ok(frame) = frame {
        let _ = monitor.unmarshal(&frame, Operator::ADMIN);
    }
    let _ = Monitor::attach(name, None).map(|m| m.get(&[]));
}

fn security_trial(name: &str, rng: &mut Rng) {
    let region = std::sync::Arc::new(SharedRegion::create_named(name, 4096, 1).unwrap());
    let sec = Security::in_shared_region(region.clone(), 0, LockType::Mutex).unwrap();
    let op = Operator::alloc();
    sec.authorize(&[op]).unwrap();
    drop(sec.lock(op).unwrap());
    corrupt(&region, rng);
    let sec = match Security::in_shared_region(region.clone(), 0, LockType::Mutex) {
        Ok(s) => s,
        Err(_) => return, // refused as not a lock: a typed error, fine
    };
    let _ = sec.lock_type();
    let _ = sec.holder();
    let _ = sec.writer();
    let _ = sec.is_authorised(op);
    let _ = sec.mute_time();
    let _ = sec.wait_time();
    sec.set_mute_time(Duration::from_millis(5));
    if sec.acquire_timeout(op, SHORT).is_ok() {
        let _ = sec.release(op);
    }
    drop(sec.read_timeout(op, SHORT));
    let _ = sec.authorize(&[Operator::alloc()]);
    sec.update_lock(LockType::ReadWrite);
    sec.register(op);
    drop(sec.lock_timeout(op, SHORT));
    drop(sec.read_timeout(Operator::alloc(), SHORT));
    sec.update_lock(LockType::Spin);
    drop(sec.lock_timeout(op, SHORT));
}

/// Runs `trials` trials of `kind` from `seed`, each in its own child;
/// panics listing every hang and crash.
fn run(kind: &str, trial: fn(&str, &mut Rng), trials: u64, seed: u64) {
    let name = format!("xme-corrupt-{kind}-{}", std::process::id());
    let done = SharedRegion::anonymous(8).unwrap();
    let progress: &AtomicU64 = done.place(0).unwrap();
    let mut failures = Vec::new();
    for t in seed..seed + trials {
        progress.store(0, Ordering::Relaxed);
        let mut child = fork_child(|| {
            let mut rng = Rng::new(t);
            trial(&name, &mut rng);
            progress.store(1, Ordering::Release);
            0
        })
        .unwrap();
        let start = Instant::now();
        let fate = loop {
            if let Some(f) = child.try_wait().unwrap() {
                break Some(f);
            }
            if start.elapsed() > DEADLINE {
                break None;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        match fate {
            None => {
                failures.push(format!("trial {t}: hung (killed after {DEADLINE:?})"));
                let _ = child.kill();
            }
            Some(f) if !f.is_success() => failures.push(format!("trial {t}: {f}")),
            Some(_) => {}
        }
        // A killed or crashed child leaves its named region behind.
        SharedRegion::remove_named(&name).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{kind}: {} of {trials} trials failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corrupt_manager_regions_never_hang_or_crash() {
    run("manager", manager_trial, 300, 0);
}

#[test]
fn corrupt_monitor_regions_never_hang_or_crash() {
    run("monitor", monitor_trial, 300, 0);
}

#[test]
fn corrupt_security_regions_never_hang_or_crash() {
    run("security", security_trial, 300, 0);
}

/// 10,000 trials of each kind (CI runs this in release).
#[test]
#[ignore = "long: run with --ignored (CI does, in release)"]
fn ten_thousand_corrupt_regions_of_each_kind() {
    run("manager", manager_trial, 10_000, 1_000_000);
    run("monitor", monitor_trial, 10_000, 1_000_000);
    run("security", security_trial, 10_000, 1_000_000);
}

/// Runs one manager trial in this process (debugging: XME_TRIAL=n).
#[test]
#[ignore = "debugging aid"]
fn one_manager_trial() {
    let t: u64 = std::env::var("XME_TRIAL").unwrap().parse().unwrap();
    let name = format!("xme-corrupt-debug-{}", std::process::id());
    manager_trial(&name, &mut Rng::new(t));
}
