//! The claim protocol of the board (see `board.rs`), on plain atomics so
//! loom can check it (`--cfg loom`): which call a worker takes, and which
//! call a worker that died was running.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One worker's slot: the call it runs (`call + 1`, 0 when idle) and since when.
pub(crate) struct Slot<'a> {
    pub current: &'a AtomicU64,
    pub started: &'a AtomicU64,
}

/// Takes the next free call at or after `cursor` for the worker `serial`
/// whose slot is `slot`; `None` when every call is taken.
pub(crate) fn claim(
    cursor: &AtomicU64,
    claims: &[AtomicU32],
    slot: &Slot<'_>,
    serial: u32,
    now_ns: u64,
) -> Option<usize> {
    loop {
        let g = cursor.load(Ordering::Acquire) as usize;
        if g >= claims.len() {
            return None;
        }
        // Announce before claiming, so a worker killed right after its CAS
        // still names its call. Release pairs with the parent's Acquire load
        // of `current` in `running`.
        slot.started.store(now_ns, Ordering::Relaxed);
        slot.current.store(g as u64 + 1, Ordering::Release);
        // AcqRel: a winner's slot store is ordered before its claim, which
        // the parent acquires when it reads the claim.
        let won = claims[g]
            .compare_exchange(0, serial, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        // Whoever sees `g` taken helps move the cursor past it.
        let _ =
            cursor.compare_exchange(g as u64, g as u64 + 1, Ordering::AcqRel, Ordering::Relaxed);
        if won {
            return Some(g);
        }
    }
}

/// The call worker `serial` with slot `slot` claimed and runs (or ran until
/// it died), and since when: its slot names the call and the claim holds its
/// serial (a slot alone may name a call another worker won).
pub(crate) fn running(claims: &[AtomicU32], slot: &Slot<'_>, serial: u32) -> Option<(usize, u64)> {
    let g = slot.current.load(Ordering::Acquire).checked_sub(1)? as usize;
    let started_ns = slot.started.load(Ordering::Relaxed);
    (g < claims.len() && claims[g].load(Ordering::Acquire) == serial).then_some((g, started_ns))
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-exec --release --lib`

    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    struct Board {
        cursor: AtomicU64,
        claims: Vec<AtomicU32>,
        slots: Vec<(AtomicU64, AtomicU64)>,
    }

    fn board(workers: usize, calls: usize) -> Arc<Board> {
        Arc::new(Board {
            cursor: AtomicU64::new(0),
            claims: (0..calls).map(|_| AtomicU32::new(0)).collect(),
            slots: (0..workers)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
        })
    }

    fn slot(b: &Board, w: usize) -> Slot<'_> {
        Slot {
            current: &b.slots[w].0,
            started: &b.slots[w].1,
        }
    }

    /// Two workers race over three calls. Worker 1 is killed right after
    /// its first claim (before finishing it); worker 2 claims, runs and
    /// finishes calls until none is left. Every call is taken exactly once,
    /// and the parent, reading the slots afterwards, blames worker 1 for
    /// exactly the call it took and worker 2 for nothing.
    #[test]
    fn every_call_is_taken_once_and_a_killed_worker_names_its_call() {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        xme_core::sync::loom_model(2, || {
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let b = board(2, 3);
            let b1 = b.clone();
            let killed = thread::spawn(move || claim(&b1.cursor, &b1.claims, &slot(&b1, 0), 1, 7));
            let b2 = b.clone();
            let worker = thread::spawn(move || {
                let mut won = Vec::new();
                while let Some(g) = claim(&b2.cursor, &b2.claims, &slot(&b2, 1), 2, 7) {
                    won.push(g);
                    slot(&b2, 1).current.store(0, Ordering::Release); // finished
                }
                won
            });
            let taken_by_killed = killed.join().unwrap();
            let mut all = worker.join().unwrap();
            all.extend(taken_by_killed);
            all.sort();
            assert_eq!(all, [0, 1, 2], "each call exactly once");
            let blamed = running(&b.claims, &slot(&b, 0), 1).map(|(g, _)| g);
            assert_eq!(blamed, taken_by_killed);
            assert_eq!(running(&b.claims, &slot(&b, 1), 2), None);
        });
        let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
        assert!(runs > 1, "the model explored {runs} execution(s)");
    }

    /// The parent reads a worker's slot while the worker claims: whatever
    /// it sees names a call that worker really won (never one it lost).
    #[test]
    fn the_parent_never_blames_a_worker_for_a_call_it_lost() {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        xme_core::sync::loom_model(2, || {
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let b = board(2, 1);
            let (b1, b2) = (b.clone(), b.clone());
            let w1 = thread::spawn(move || claim(&b1.cursor, &b1.claims, &slot(&b1, 0), 1, 0));
            let w2 = thread::spawn(move || claim(&b2.cursor, &b2.claims, &slot(&b2, 1), 2, 0));
            let seen = running(&b.claims, &slot(&b, 0), 1);
            let won1 = w1.join().unwrap();
            let _ = w2.join().unwrap();
            if let Some((g, _)) = seen {
                assert_eq!(Some(g), won1);
            }
        });
        let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
        assert!(runs > 1, "the model explored {runs} execution(s)");
    }
}
