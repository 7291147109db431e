//! An idle pool costs no CPU: the driver spins a little before it sleeps
//! (`Driver::spin`), and that spin must end, also after streams and
//! batches and while a long call runs. The driver thread's own CPU time is
//! read from `/proc` (this file holds one test, so its process has one
//! pool at a time).

use std::time::Duration;

use xme_exec::{Array, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The pool's driver thread (the one thread of this process named so).
fn driver_tid() -> u32 {
    let tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "xme-pool").then(|| e.file_name().to_string_lossy().parse().ok())?
        })
        .collect();
    assert_eq!(tids.len(), 1, "driver threads {tids:?}");
    tids[0]
}

/// A thread's CPU time (user + system), in clock ticks.
fn cpu_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // Fields after "pid (comm) ": state is the first; utime and stime the
    // 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The driver's CPU time over `idle` of waiting, in clock ticks.
fn ticks_over(tid: u32, idle: Duration) -> u64 {
    let before = cpu_ticks(tid);
    std::thread::sleep(idle);
    cpu_ticks(tid) - before
}

#[test]
fn an_idle_pool_and_one_waiting_on_a_long_call_burn_no_cpu() {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // 3% of a core over a second: a driver that spun on would take ~100%.
    let most = (hz * 3).div_ceil(100);
    for pnum in [1, 2, 4] {
        let pool = Pool::new(pnum).unwrap();
        let tid = driver_tid();
        for i in 0..2000u64 {
            assert_eq!(pool.spawn(square, i).join().unwrap(), i * i);
        }
        let n = pool
            .stream(square, 0..20_000u64)
            .unordered()
            .filter(|(i, r)| *r.as_ref().unwrap() == (*i as u64).pow(2))
            .count();
        assert_eq!(n, 20_000);
        let out = pool.fun(square, Array::new(0..1000u64)).unwrap();
        assert_eq!(out.into_result().unwrap()[999], 999 * 999);
        let ticks = ticks_over(tid, Duration::from_secs(1));
        assert!(
            ticks <= most,
            "pnum {pnum}: the idle driver took {ticks} ticks in 1 s"
        );
        if pnum == 2 {
            // Waiting on calls that run on: the driver wakes each 100 ms
            // tick, and spins after none of those waits.
            let long: Vec<_> = (0..2).map(|_| pool.spawn(sleep_ms, 1500)).collect();
            std::thread::sleep(Duration::from_millis(100));
            let ticks = ticks_over(tid, Duration::from_secs(1));
            assert!(
                ticks <= most,
                "the driver took {ticks} ticks in 1 s of a long call"
            );
            for c in long {
                assert_eq!(c.join().unwrap(), 1500);
            }
        }
    }
}
