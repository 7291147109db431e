//! Helpers shared by the cross-process lock tests.
#![allow(dead_code, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::Fate;
use xme_core::process::fork_child;

use xme_core::SharedRegion;

/// A region holding a plain (non-atomic) counter at offset 0 and a few atomics after it.
pub struct Shared {
    pub region: SharedRegion,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            region: SharedRegion::anonymous(4096).unwrap(),
        }
    }

    /// A deliberately non-atomic read-modify-write of the counter, with a pause
    /// between the read and the write so that unprotected updates get lost.
    pub fn bump_plain(&self) {
        let p = self.region.raw(0, 8).unwrap() as *mut u64;
        // SAFETY: offset 0..8 of the region is reserved for this counter; the
        // point of the test is to race on it (volatile keeps each access real).
        unsafe {
            let v = p.read_volatile();
            for _ in 0..20 {
                std::hint::spin_loop();
            }
            p.write_volatile(v + 1);
        }
    }

    pub fn plain(&self) -> u64 {
        let p = self.region.raw(0, 8).unwrap() as *const u64;
        // SAFETY: as in bump_plain; read after every writer has exited.
        unsafe { p.read_volatile() }
    }

    /// Atomic cell `i` (0..32) after the plain counter.
    pub fn cell(&self, i: usize) -> &AtomicU64 {
        self.region.place(64 + 8 * i).unwrap()
    }
}

/// Forks a child that runs `take` (acquire something), signals, and sleeps;
/// waits for the signal, then kills the child with SIGKILL. Returns its fate.
pub fn killed_after(shared: &Shared, take: impl FnOnce()) -> Fate {
    let flag = shared.cell(31);
    flag.store(0, Ordering::SeqCst);
    let child = fork_child(|| {
        take();
        flag.store(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(60));
        0
    })
    .unwrap();
    let t = Instant::now();
    while flag.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the child never took hold"
        );
        std::hint::spin_loop();
    }
    child.kill().unwrap()
}
