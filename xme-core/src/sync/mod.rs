//! The synchronisation patterns xme's crates build on, each a small type
//! placeable in a shared region and model-checked with loom once:
//!
//! - [`PidLock`]: a lock word naming its holder's pid, taken over when the
//!   holder died.
//! - [`EventCount`]: sleep until another process signals, without a lost
//!   wake-up and without a system call while nobody sleeps.
//! - [`Backoff`]: how long to spin and yield before sleeping.
//! - [`SeqLock`]: optimistic reads validated by a stamp (in place, or over
//!   a double buffer), with a pid-named writer word.
//!
//! Run the models with `RUSTFLAGS="--cfg loom" cargo test -p xme-core --release --lib`.

mod backoff;
mod event_count;
mod pid_lock;
mod primitive;
mod seq_lock;

pub use backoff::{Backoff, Step};
pub use event_count::{EventCount, Sleeper};
#[cfg(loom)]
pub use pid_lock::LOOM_DEAD_PIDS;
pub use pid_lock::PidLock;
pub use seq_lock::{InPlaceWrite, SeqLock, SpareWrite};

/// Runs a loom model exploring interleavings with at most
/// `preemption_bound` preemptions (the bound every xme model uses: 2 or 3).
#[cfg(loom)]
#[doc(hidden)]
///
/// Panics unless the search explored more than one execution: loom's search
/// can stop after one when a thread reads a word before it writes it, and a
/// model that explored one interleaving checked nothing.
pub fn loom_model(preemption_bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemption_bound);
    b.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        runs > 1,
        "the loom model explored {runs} execution(s): it checks nothing"
    );
}
