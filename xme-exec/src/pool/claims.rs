//! Which call a worker runs: the protocol that lets the parent blame exactly
//! the call a dead worker was running, re-run only calls that never started,
//! and cancel a task that was sent but not started.
//!
//! Two kinds of word, both in the worker's slot of the pool's region:
//! - a **claim word** per task in flight (`ordinal << 2 | state`): the driver
//!   writes `QUEUED` before it sends the task; the worker takes it with a CAS
//!   `QUEUED → RUNNING` before its first call; the driver cancels with a CAS
//!   `QUEUED → CANCELLED`. Exactly one CAS wins, so a cancelled task never
//!   starts and a started one is never reported as cancelled-before-start.
//! - the **progress word** (`ordinal << 24 | call << 2 | phase`), written by
//!   the worker before a call (`RUNNING`), when the call returned
//!   (`REPLYING`) and once its result is in the ring (`DONE`). After the
//!   worker died, the parent reads it: calls before it have results, the call
//!   it names was running (blame it) or had finished and lost its result
//!   (`REPLYING`: a distinct error, never run again), calls after it never
//!   started (run them elsewhere).

use super::sync::{AtomicU64, Ordering};

/// Tasks one worker may have in flight (claim words per slot).
pub(crate) const CLAIMS: usize = 64;
/// Calls one task may hold (the progress word's call field is 22 bits).
pub(crate) const MAX_TASK_CALLS: usize = 1 << 22;

const QUEUED: u64 = 1;
const RUNNING: u64 = 2;
const CANCELLED: u64 = 3;

/// The worker is calling the function.
pub(crate) const PHASE_RUNNING: u64 = 1;
/// The function returned; its result is not in the ring yet.
pub(crate) const PHASE_REPLYING: u64 = 2;
/// The call's result is in the ring (or on the socket, whole).
pub(crate) const PHASE_DONE: u64 = 3;

/// The claim word of task `ordinal` among a slot's `claims`.
pub(crate) fn claim_word(claims: &[AtomicU64], ordinal: u64) -> &AtomicU64 {
    &claims[(ordinal % claims.len() as u64) as usize]
}

/// Driver: marks task `ordinal` queued, before sending it.
pub(crate) fn queue(claims: &[AtomicU64], ordinal: u64) {
    // Release: the worker that reads the task (after a socket read, which
    // orders it anyway) sees the word.
    claim_word(claims, ordinal).store(ordinal << 2 | QUEUED, Ordering::Release);
}

/// What the worker found when it tried to start a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Ours to run.
    Run,
    /// The driver cancelled it first: skip it.
    Skip,
    /// The word holds neither: the region is corrupt.
    Corrupt,
}

/// Worker: takes task `ordinal` before running its first call.
pub(crate) fn start(claims: &[AtomicU64], ordinal: u64) -> Start {
    let word = claim_word(claims, ordinal);
    // AcqRel: one of this CAS and the driver's cancel wins, in one order.
    match word.compare_exchange(
        ordinal << 2 | QUEUED,
        ordinal << 2 | RUNNING,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => Start::Run,
        Err(now) if now == ordinal << 2 | CANCELLED => Start::Skip,
        Err(_) => Start::Corrupt,
    }
}

/// Driver: cancels task `ordinal` if the worker has not started it; `true`
/// when cancelled (it will never run), `false` when it started.
pub(crate) fn cancel(claims: &[AtomicU64], ordinal: u64) -> bool {
    claim_word(claims, ordinal)
        .compare_exchange(
            ordinal << 2 | QUEUED,
            ordinal << 2 | CANCELLED,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
}

/// The progress word's value for call `call` of task `ordinal` in `phase`.
pub(crate) fn progress(ordinal: u64, call: usize, phase: u64) -> u64 {
    ordinal << 24 | (call as u64) << 2 | phase
}

/// Worker: records where it is. Release: a driver that reads this value
/// after the worker died (or while stopping it) sees every result published
/// before it.
pub(crate) fn record(word: &AtomicU64, ordinal: u64, call: usize, phase: u64) {
    word.store(progress(ordinal, call, phase), Ordering::Release);
}

/// Where a worker was: `(task ordinal, call, phase)`; ordinal 0 means it
/// started nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub ordinal: u64,
    pub call: usize,
    pub phase: u64,
}

/// Driver: reads a worker's progress.
pub(crate) fn read(word: &AtomicU64) -> Progress {
    // Acquire: pairs with `record`.
    let v = word.load(Ordering::Acquire);
    Progress {
        ordinal: v >> 24,
        call: ((v >> 2) & (MAX_TASK_CALLS as u64 - 1)) as usize,
        phase: v & 3,
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    /// The worker starts tasks 1 and 2 while the driver cancels task 2:
    /// task 2 runs or is cancelled, never both and never neither, and task 1
    /// always runs.
    #[test]
    fn a_task_is_run_or_cancelled_exactly_once() {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        xme_core::sync::loom_model(3, || {
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let claims: Arc<Vec<AtomicU64>> =
                Arc::new((0..CLAIMS).map(|_| AtomicU64::new(0)).collect());
            let ran2 = Arc::new(AtomicBool::new(false));
            queue(&claims, 1);
            queue(&claims, 2);
            let (c, r) = (claims.clone(), ran2.clone());
            let worker = loom::thread::spawn(move || {
                assert_eq!(start(&c, 1), Start::Run);
                match start(&c, 2) {
                    Start::Run => r.store(true, Ordering::SeqCst),
                    Start::Skip => {}
                    Start::Corrupt => panic!("corrupt"),
                }
            });
            let cancelled = cancel(&claims, 2);
            worker.join().unwrap();
            assert_ne!(cancelled, ran2.load(Ordering::SeqCst));
        });
        // loom's search can stop after one execution when a thread reads a
        // word before it writes it; a model that explored one checked
        // nothing.
        let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
        assert!(runs > 1, "the model explored {runs} execution(s)");
    }
}
