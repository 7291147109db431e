//! Helpers for the pool's tests: a ledger in named shared memory that
//! counts how often each call ran (tasks reach it by name: a worker is not a
//! fork of the test, so it shares nothing the test made at run time), a
//! serial lock for tests that count processes, and process counts.

#![allow(dead_code)] // each test file uses a part

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xme_core::SharedRegion;

/// Tests of one file that count processes or descriptors run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const LEDGER_VERSION: u32 = 0x4c45_4447;

/// Per-call run counters in a named region, removed on drop.
pub struct Ledger {
    pub name: String,
    region: SharedRegion,
    calls: usize,
}

impl Ledger {
    pub fn new(calls: usize) -> Ledger {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "xme-test-ledger-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let region = SharedRegion::create_named(&name, calls * 4 + 8, LEDGER_VERSION).unwrap();
        Ledger {
            name,
            region,
            calls,
        }
    }

    pub fn runs(&self, call: usize) -> u32 {
        self.counters()[call].load(Ordering::SeqCst)
    }

    fn counters(&self) -> &[AtomicU32] {
        self.region.slice(8, self.calls).unwrap()
    }

    /// Calls that ran more than once, with their counts.
    pub fn twice(&self) -> Vec<(usize, u32)> {
        (0..self.calls)
            .map(|i| (i, self.runs(i)))
            .filter(|&(_, n)| n > 1)
            .collect()
    }
}

/// In a worker: counts one run of `call` in the ledger `name` (the region
/// stays open in the worker for later calls).
pub fn bump(name: &str, call: usize) {
    static OPEN: Mutex<Option<(String, SharedRegion)>> = Mutex::new(None);
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if open.as_ref().is_none_or(|(n, _)| n != name) {
        let region = SharedRegion::open_named(name, LEDGER_VERSION).unwrap();
        *open = Some((name.to_string(), region));
    }
    let (_, region) = open.as_ref().unwrap();
    let counters: &[AtomicU32] = region.slice(8, call + 1).unwrap();
    counters[call].fetch_add(1, Ordering::SeqCst);
}

/// Open descriptors of this process.
pub fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory of this process, in KiB.
pub fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4
}

/// Waits until `f` holds, up to `limit`; whether it did.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// This process's own pid.
pub fn me() -> i32 {
    std::process::id() as i32
}

/// Kills a process with SIGKILL (no error if it is gone).
pub fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Named regions of this process's tests left in /dev/shm.
pub fn leftover_ledgers() -> Vec<String> {
    let prefix = format!("xme-test-ledger-{}-", std::process::id());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&prefix))
                .collect()
        })
        .unwrap_or_default()
}
