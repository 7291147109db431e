//! A run stopped by its interrupt check (a flag, a signal) kills and reaps
//! every worker; raw-byte results cross whole, beside failed calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use xme_core::SharedRegion;
use xme_exec::{Array, ExecError, RawBytes, Xme};

/// One word per call, where the worker that ran it writes its pid (tests
/// of this binary run side by side, so "my children" would mix theirs).
struct Pids(SharedRegion);

impl Pids {
    fn new() -> Pids {
        Pids(SharedRegion::anonymous(64 * 4).unwrap())
    }

    fn record(&self, call: usize) {
        let slot: &AtomicU32 = self.0.place(call * 4).unwrap();
        slot.store(std::process::id(), Ordering::SeqCst);
    }

    /// Panics unless every recorded worker is gone and reaped (no
    /// /proc entry: not running, not a zombie).
    fn assert_all_reaped(&self) {
        for call in 0..64 {
            let pid = self
                .0
                .place::<AtomicU32>(call * 4)
                .unwrap()
                .load(Ordering::SeqCst);
            if pid != 0 {
                assert!(
                    !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    "the worker of call {call} (pid {pid}) was left behind"
                );
            }
        }
    }
}

#[test]
fn a_flag_stops_the_run_and_every_worker_is_reaped() {
    let pids = Pids::new();
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let (flag, counted) = (stop.clone(), checks.clone());
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        flag.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    let err = Xme::new()
        .pnum(2)
        .interrupt_when(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            stop.load(Ordering::Relaxed)
        })
        .fun(
            |i: u64| {
                pids.record(i as usize);
                if i > 0 {
                    // Call 0 ends at once: one call settled before the stop.
                    std::thread::sleep(Duration::from_secs(120));
                }
                i
            },
            Array::new(0..4u64),
        )
        .unwrap_err();
    setter.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the stop was not noticed"
    );
    let ExecError::Interrupted { settled, total } = err else {
        panic!("expected Interrupted, got {err:?}")
    };
    assert_eq!((settled, total), (1, 4));
    // Checked every 50 ms while waiting: far more than 3 times in 1.5 s,
    // even on a loaded machine.
    assert!(checks.load(Ordering::Relaxed) >= 3, "{checks:?}");
    pids.assert_all_reaped();
}

static SIGINT_SEEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: i32) {
    SIGINT_SEEN.store(true, Ordering::Relaxed);
}

#[test]
fn a_signal_cuts_the_wait_short() {
    let pids = Pids::new();
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        sigaction(
            Signal::SIGINT,
            &SigAction::new(
                SigHandler::Handler(on_sigint),
                SaFlags::empty(),
                SigSet::empty(),
            ),
        )
        .unwrap();
    }
    let me = nix::sys::pthread::pthread_self();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        // To the waiting thread, as a terminal's Ctrl-C reaches a
        // single-threaded program.
        nix::sys::pthread::pthread_kill(me, Signal::SIGINT).unwrap();
    });
    // The check is only true once the signal arrived; it then stops the
    // run at once (poll returns EINTR), without waiting for the next tick.
    let err = Xme::new()
        .pnum(2)
        .interrupt_when(|| SIGINT_SEEN.load(Ordering::Relaxed))
        .fun(
            |i: usize| {
                pids.record(i);
                std::thread::sleep(Duration::from_secs(120))
            },
            Array::new(0..3usize),
        )
        .unwrap_err();
    sender.join().unwrap();
    assert!(
        matches!(
            err,
            ExecError::Interrupted {
                settled: 0,
                total: 3
            }
        ),
        "{err:?}"
    );
    pids.assert_all_reaped();
}

#[test]
fn raw_results_cross_whole_beside_a_killed_call() {
    const BIG: usize = 10 << 20;
    let out = Xme::new()
        .pnum(2)
        .fun(
            |i: usize| -> RawBytes {
                match i {
                    1 => {
                        nix::sys::signal::raise(Signal::SIGKILL).unwrap();
                        unreachable!()
                    }
                    2 => RawBytes((0..BIG).map(|b| (b % 251) as u8).collect()),
                    _ => RawBytes(vec![i as u8; i]),
                }
            },
            Array::new(0..5usize),
        )
        .unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].as_ref().unwrap().as_slice(), b"");
    assert_eq!(out[1].as_ref().unwrap_err().signal(), Some(9));
    let big = out[2].as_ref().unwrap();
    assert_eq!(big.len(), BIG);
    assert!(big.iter().enumerate().all(|(b, &v)| v == (b % 251) as u8));
    assert_eq!(out[3].as_ref().unwrap().as_slice(), [3, 3, 3]);
    assert_eq!(out[4].as_ref().unwrap().as_slice(), [4, 4, 4, 4]);
}
