//! The two-process floors every benchmark compares with, measured in the
//! same run as the figures they are compared to.

#![allow(dead_code)] // each bench uses some of them

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use xme::core::SharedRegion;
use xme::core::futex;
use xme::core::process::fork_child;

/// A shared word handed back and forth (1: the partner's turn, 0: ours,
/// 2: stop), each side sleeping on a shared futex until its turn.
pub fn futex_pingpong(g: &mut BenchmarkGroup<'_, WallTime>, name: &str) {
    let region = SharedRegion::anonymous(64).unwrap();
    let word: &AtomicU32 = region.place(0).unwrap();
    let partner = fork_child(|| {
        loop {
            match word.load(Ordering::Acquire) {
                1 => {
                    word.store(0, Ordering::Release);
                    futex::wake(word, 1);
                }
                2 => return 0,
                _ => {
                    futex::wait(word, 0, Some(Duration::from_millis(50)));
                }
            }
        }
    })
    .unwrap();
    g.bench_function(name, |b| {
        b.iter(|| {
            word.store(1, Ordering::Release);
            futex::wake(word, 1);
            while word.load(Ordering::Acquire) != 0 {
                futex::wait(word, 1, Some(Duration::from_millis(50)));
            }
        })
    });
    word.store(2, Ordering::Release);
    futex::wake(word, 1);
    partner.wait().unwrap();
}

/// The same hand-off, both sides spinning on the word.
pub fn spin_pingpong(g: &mut BenchmarkGroup<'_, WallTime>, name: &str) {
    let region = SharedRegion::anonymous(64).unwrap();
    let word: &AtomicU32 = region.place(0).unwrap();
    let partner = fork_child(|| {
        loop {
            match word.load(Ordering::Acquire) {
                1 => word.store(0, Ordering::Release),
                2 => return 0,
                _ => std::hint::spin_loop(),
            }
        }
    })
    .unwrap();
    g.bench_function(name, |b| {
        b.iter(|| {
            word.store(1, Ordering::Release);
            while word.load(Ordering::Acquire) != 0 {
                std::hint::spin_loop();
            }
        })
    });
    word.store(2, Ordering::Release);
    partner.wait().unwrap();
}

/// 8 bytes to a forked process and back over two pipes.
pub fn pipe_pingpong(g: &mut BenchmarkGroup<'_, WallTime>, name: &str) {
    // pipe() gives (read end, write end).
    let (to_child, child_in) = nix::unistd::pipe().unwrap();
    let (from_child, child_out) = nix::unistd::pipe().unwrap();
    let echo = fork_child(|| {
        let mut buf = [0u8; 8];
        while let Ok(8) = nix::unistd::read(&to_child, &mut buf) {
            if nix::unistd::write(child_out.as_fd(), &buf).is_err() {
                break;
            }
        }
        0
    })
    .unwrap();
    g.bench_function(name, |b| {
        let mut buf = [0u8; 8];
        b.iter(|| {
            nix::unistd::write(child_in.as_fd(), &7u64.to_le_bytes()).unwrap();
            nix::unistd::read(&from_child, &mut buf).unwrap();
        })
    });
    // The child holds a copy of the write end too, so it would never see
    // EOF: end it.
    echo.kill().unwrap();
}
